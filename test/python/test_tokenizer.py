"""g3moe's tokenisation of chat, text and prompt/completion data is the Python
sentencepiece package's: a tiny Gemma-style SentencePiece model is trained
with spm_train at test time (scripts/make-tiny-tokenizer.sh), g3moe-run dumps
the rows it would train on (--dump-data), and the same conversations are
rendered here from the template rules of G3MOE_SPEC.md 4.4 and tokenised
with sentencepiece. (test_chat_template_hf.py checks the same rows against
transformers' apply_chat_template.)"""
import json
import subprocess

import pytest
import sentencepiece as spm

from conftest import BIN, EXAMPLES, SOURCE_DIR

BOS_TEXT = "<bos>"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    subprocess.run([str(SOURCE_DIR / "scripts" / "make-tiny-tokenizer.sh"), str(out)],
                   check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def sp(tokenizer_dir):
    return spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    path = tmp_path_factory.mktemp("step") / "tiny.step"
    subprocess.run([str(BIN / "g3moe-compile"), str(EXAMPLES / "tiny-g3moe" / "config.json"),
                    "--quiet", "--seq-len", "256", "--micro-batch", "1", "-o", str(path)],
                   check=True, capture_output=True, text=True)
    return path


def render(messages):
    """The seed's chat template (R0/R1), written from the spec's rules."""
    out = BOS_TEXT
    if messages and messages[0]["role"] == "system":
        content = messages[0]["content"]
        text = content if isinstance(content, str) else content[0]["text"]
        out += "<start_of_turn>system\n" + text.strip() + "<end_of_turn>\n"
        messages = messages[1:]
    for i, message in enumerate(messages):
        assert (message["role"] == "user") == (i % 2 == 0), "roles must alternate"
        role = "model" if message["role"] == "assistant" else message["role"]
        content = message["content"]
        if isinstance(content, str):
            body = content.strip()
        else:
            body = "".join("<start_of_image>" if part["type"] == "image" else part["text"].strip()
                           for part in content)
        out += "<start_of_turn>" + role + "\n" + body + "<end_of_turn>\n"
    return out


def tokenize_rendered(sp, text):
    # <bos> is a control symbol, which SentencePiece never matches in text:
    # the template's leading <bos> is the token itself (HF adds no second one).
    assert text.startswith(BOS_TEXT)
    return [sp.piece_to_id(BOS_TEXT)] + sp.encode(text[len(BOS_TEXT):])


def has_image(messages):
    return any(isinstance(m["content"], list) and any(p["type"] == "image" for p in m["content"])
               for m in messages)


def dump(g3moe_run, step, tokenizer_dir, data, out, *flags):
    proc = g3moe_run(step, "--data", data, "--tokenizer", tokenizer_dir, "--dump-data", out,
                     *flags)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, proc.stdout


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def test_special_tokens_are_single_user_defined_pieces(sp):
    assert [sp.piece_to_id(p) for p in ("<pad>", "<eos>", "<bos>")] == [0, 1, 2]
    for piece in ("<start_of_turn>", "<end_of_turn>", "<start_of_image>"):
        assert sp.encode(piece) == [sp.piece_to_id(piece)]
    assert sp.get_piece_size() == 512


def test_chat_example_matches_sentencepiece(tmp_path, sp, step, tokenizer_dir, g3moe_run):
    chat = EXAMPLES / "data" / "chat.jsonl"
    conversations = [json.loads(line)["messages"] for line in chat.read_text().splitlines()]
    assert any(has_image(c) for c in conversations)
    assert any(c[0]["role"] == "system" for c in conversations)

    # --images mask keeps every conversation; the template renders each image
    # part as <start_of_image>, whose label is masked.
    rows, log = dump(g3moe_run, step, tokenizer_dir, chat, tmp_path / "masked.jsonl",
                     "--images", "mask")
    n_images = sum(has_image(c) for c in conversations)
    assert f"{n_images} samples with images kept" in log
    assert len(rows) == len(conversations)
    image_id = sp.piece_to_id("<start_of_image>")
    for conversation, row in zip(conversations, rows):
        expected = tokenize_rendered(sp, render(conversation))
        assert row["input_ids"] == expected
        assert row["labels"] == [-100 if t == image_id else t for t in expected]
        assert row["positions"] == list(range(len(expected)))
        assert row["segment_ids"] == [1] * len(expected)

    # The default drops them, and says how many.
    rows, log = dump(g3moe_run, step, tokenizer_dir, chat, tmp_path / "dropped.jsonl")
    assert f"{n_images} samples with images dropped" in log
    kept = [c for c in conversations if not has_image(c)]
    assert [r["input_ids"] for r in rows] == [tokenize_rendered(sp, render(c)) for c in kept]
    assert all(r["labels"] == r["input_ids"] for r in rows)  # full-sequence loss


def test_unicode_and_numbers(tmp_path, sp, step, tokenizer_dir, g3moe_run):
    conversations = [
        [{"role": "system", "content": "\u3000 Réponds en français, s'il te plaît. \u00a0"},
         {"role": "user", "content": "Combien font 12 × 12 ? Et 3,14159 + 2,71828 ?"},
         {"role": "assistant", "content": "12 × 12 = 144, et la somme vaut 5,85987. ✓"}],
        [{"role": "user", "content": [{"type": "text", "text": " 日本語のテキスト: 東京は2025年に… "},
                                      {"type": "text", "text": "\tnaïve café — “quotes” 🙂\n"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Ünïcödé ß Ø ŋ; 1,234,567.89 € and -0.5e-3"}]},
         {"role": "user", "content": "  multiple   spaces\tand\ttabs\n\nand blank lines  "},
         {"role": "assistant", "content": "0123456789 9876543210 00 007"}],
        [{"role": "user", "content": "Emoji 👩‍💻 and combining e\u0301 and Ελληνικά, Русский, العربية"},
         {"role": "assistant", "content": "<start_of_turn> inside text is the token itself, as sentencepiece does."}],
    ]
    data = write_jsonl(tmp_path / "unicode.jsonl", [{"messages": c} for c in conversations])
    rows, _ = dump(g3moe_run, step, tokenizer_dir, data, tmp_path / "rows.jsonl")
    assert len(rows) == len(conversations)
    for conversation, row in zip(conversations, rows):
        expected = tokenize_rendered(sp, render(conversation))
        assert row["input_ids"] == expected
        # Byte fallback: nothing is unknown.
        assert sp.unk_id() not in expected


def test_assistant_only_labels(tmp_path, sp, step, tokenizer_dir, g3moe_run):
    conversations = [
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "What is 2 + 2?"},
         {"role": "assistant", "content": "It is 4."},
         {"role": "user", "content": "And 3 + 3?"},
         {"role": "assistant", "content": [{"type": "text", "text": " Six, or 6. "}]}],
        [{"role": "user", "content": "Grüße aus Köln!"},
         {"role": "assistant", "content": "Schöne Grüße zurück — bis bald."}],
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in conversations])
    rows, _ = dump(g3moe_run, step, tokenizer_dir, data, tmp_path / "rows.jsonl",
                   "--assistant-only-loss")
    for conversation, row in zip(conversations, rows):
        assert row["input_ids"] == tokenize_rendered(sp, render(conversation))
        trained = [t for t in row["labels"] if t != -100]
        assistant = [m["content"] for m in conversation if m["role"] == "assistant"]
        texts = [c.strip() if isinstance(c, str) else "".join(p["text"].strip() for p in c)
                 for c in assistant]
        # Each assistant turn's content through its <end_of_turn>, nothing else.
        assert sp.decode(trained) == "".join(t + "<end_of_turn>" for t in texts)
        for label, token in zip(row["labels"], row["input_ids"]):
            assert label in (-100, token)


def test_text_and_prompt_completion(tmp_path, sp, step, tokenizer_dir, g3moe_run):
    bos, eos = sp.piece_to_id("<bos>"), sp.piece_to_id("<eos>")
    texts = [json.loads(line)["text"]
             for line in (EXAMPLES / "data" / "text.jsonl").read_text().splitlines()]
    rows, _ = dump(g3moe_run, step, tokenizer_dir, EXAMPLES / "data" / "text.jsonl",
                   tmp_path / "text_rows.jsonl")
    assert [r["input_ids"] for r in rows] == [[bos] + sp.encode(t) + [eos] for t in texts]

    pairs = [json.loads(line) for line in
             (EXAMPLES / "data" / "prompt_completion.jsonl").read_text().splitlines()]
    rows, _ = dump(g3moe_run, step, tokenizer_dir, EXAMPLES / "data" / "prompt_completion.jsonl",
                   tmp_path / "pc_rows.jsonl", "--assistant-only-loss")
    for pair, row in zip(pairs, rows):
        assert row["input_ids"] == [bos] + sp.encode(pair["prompt"] + pair["completion"]) + [eos]
        trained = [t for t in row["labels"] if t != -100]
        assert trained[-1] == eos
        assert sp.decode(trained[:-1]) == pair["completion"]


def test_packing_keeps_documents_apart(tmp_path, sp, step, tokenizer_dir, g3moe_run):
    chat = EXAMPLES / "data" / "chat.jsonl"
    conversations = [json.loads(line)["messages"] for line in chat.read_text().splitlines()]
    kept = [c for c in conversations if not has_image(c)]
    rows, log = dump(g3moe_run, step, tokenizer_dir, chat, tmp_path / "packed.jsonl", "--packing")
    assert f"{len(kept)} examples from" in log and f"packed into {len(rows)} rows" in log
    assert len(rows) < len(kept)
    documents = []
    for row in rows:
        assert len(row["input_ids"]) <= 256
        segments = row["segment_ids"]
        assert segments[0] == 1 and all(b - a in (0, 1) for a, b in zip(segments, segments[1:]))
        for s in sorted(set(segments)):
            at = [i for i, x in enumerate(segments) if x == s]
            assert row["positions"][at[0]:at[-1] + 1] == list(range(len(at)))
            documents.append(row["input_ids"][at[0]:at[-1] + 1])
    assert documents == [tokenize_rendered(sp, render(c)) for c in kept]


def test_bad_chat_line_is_reported(tmp_path, step, tokenizer_dir, g3moe_run):
    data = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
    ])
    proc = g3moe_run(step, "--data", data, "--tokenizer", tokenizer_dir, "--dump-data",
                     tmp_path / "rows.jsonl", check=False)
    assert proc.returncode == 1
    assert f"{data}:2: messages[1] (user)" in proc.stderr
    assert not (tmp_path / "rows.jsonl").exists()
