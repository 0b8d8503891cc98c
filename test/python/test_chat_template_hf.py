"""g3moe's chat template and tokenisation against transformers'
apply_chat_template: the tiny SentencePiece model of
scripts/make-tiny-tokenizer.sh loaded as a transformers GemmaTokenizer, the
seed's Gemma-3 chat template as a Jinja template
(test/reference/gemma3_sft_chat_template.jinja) rendered by transformers'
own Jinja environment, and tokenize=True; g3moe-run's rows (--dump-data) must
be the token ids transformers produces, on the bundled chat data and on edge
cases (system messages in both content forms, multi-turn, image parts,
Arrow's column-wise messages, whitespace and Unicode). The assistant-only
labels are checked against the template's generation mask
(return_assistant_tokens_mask), and a conversation the template rejects is
rejected by g3moe too."""
import json
import subprocess

import pytest

from conftest import BIN, EXAMPLES, SOURCE_DIR

TEMPLATE = SOURCE_DIR / "test" / "reference" / "gemma3_sft_chat_template.jinja"
SEQ = 256
IGNORE = -100


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    subprocess.run([str(SOURCE_DIR / "scripts" / "make-tiny-tokenizer.sh"), str(out)],
                   check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    from transformers import GemmaTokenizer

    # from_pretrained converts tokenizer.model into a tokenizers-backed Gemma
    # tokenizer (the user-defined pieces become added tokens).
    return GemmaTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def template():
    return TEMPLATE.read_text()


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    path = tmp_path_factory.mktemp("step") / "tiny.step"
    subprocess.run([str(BIN / "g3moe-compile"), str(EXAMPLES / "tiny-g3moe" / "config.json"),
                    "--quiet", "--seq-len", str(SEQ), "--micro-batch", "1", "-o", str(path)],
                   check=True, capture_output=True, text=True)
    return path


def as_list(messages):
    """Arrow's column-wise {"role": [...], "content": [...]} as a list of
    messages, the form apply_chat_template takes."""
    if isinstance(messages, dict):
        return [{"role": r, "content": c} for r, c in zip(messages["role"], messages["content"])]
    return messages


def templated(tok, template, messages, **kwargs):
    out = tok.apply_chat_template(as_list(messages), chat_template=template, tokenize=True,
                                  return_dict=True, **kwargs)
    assert len(out["input_ids"]) < SEQ, "the comparison assumes no truncation"
    return out


def has_image(messages):
    return any(isinstance(m["content"], list) and any(p["type"] == "image" for p in m["content"])
               for m in as_list(messages))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def dump(g3moe_run, step, tokenizer_dir, data, out, *flags):
    proc = g3moe_run(step, "--data", data, "--tokenizer", tokenizer_dir, "--dump-data", out,
                     *flags)
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout


EDGE_CASES = [
    # A system message with string content, surrounded by whitespace; multi-turn.
    [{"role": "system", "content": "  You answer in one word.\n"},
     {"role": "user", "content": "Colour of the sky?"},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "\tAnd of grass? "},
     {"role": "assistant", "content": " Green. \n"}],
    # A system message with list content: only its first part is used.
    [{"role": "system", "content": [{"type": "text", "text": " Be kind. "},
                                    {"type": "text", "text": "Ignored second part."}]},
     {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "Hi there!"}]}],
    # Image parts first, between and after text parts, several in one turn,
    # text parts concatenated without separators.
    [{"role": "user", "content": [{"type": "image", "text": None},
                                  {"type": "text", "text": " What is in this picture? "},
                                  {"type": "image"},
                                  {"type": "text", "text": "And here?"},
                                  {"type": "image", "text": None}]},
     {"role": "assistant", "content": [{"type": "text", "text": "A cat, "},
                                       {"type": "text", "text": " then a dog."}]}],
    # Arrow's column-wise messages, with an image and a system message.
    {"role": ["system", "user", "assistant"],
     "content": [[{"type": "text", "text": "Describe images."}],
                 [{"type": "text", "text": "Look:"}, {"type": "image", "text": None}],
                 [{"type": "text", "text": "A red square."}]]},
    # Unicode spaces that trim strips, non-Latin scripts, emoji, digits, and
    # the template's own markers written inside text.
    [{"role": "user", "content": "\u3000\u00a0Grüße, 東京 2025 👩‍💻 e\u0301\u2003"},
     {"role": "assistant", "content": "<start_of_turn> and <end_of_turn> in text: 12 × 12 = 144"}],
    # A one-turn conversation (no assistant reply).
    [{"role": "user", "content": "Only a question?"}],
]


def test_tokenizers_agree_on_the_special_pieces(hf_tokenizer, tokenizer_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    for piece in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>",
                  "<start_of_image>"):
        assert hf_tokenizer.convert_tokens_to_ids(piece) == sp.piece_to_id(piece), piece
    assert hf_tokenizer.bos_token == "<bos>"


def test_chat_example_matches_apply_chat_template(tmp_path, hf_tokenizer, template, step,
                                                  tokenizer_dir, g3moe_run):
    chat = EXAMPLES / "data" / "chat.jsonl"
    conversations = [json.loads(line)["messages"] for line in chat.read_text().splitlines()]
    assert any(has_image(c) for c in conversations)
    assert any(as_list(c)[0]["role"] == "system" for c in conversations)
    assert any(len(as_list(c)) > 3 for c in conversations)
    image_id = hf_tokenizer.convert_tokens_to_ids("<start_of_image>")

    # --images mask keeps every conversation and masks <start_of_image>'s label.
    rows, _ = dump(g3moe_run, step, tokenizer_dir, chat, tmp_path / "masked.jsonl",
                   "--images", "mask")
    assert len(rows) == len(conversations)
    images = 0
    for conversation, row in zip(conversations, rows):
        expected = templated(hf_tokenizer, template, conversation)["input_ids"]
        assert row["input_ids"] == expected, conversation
        assert row["labels"] == [IGNORE if t == image_id else t for t in expected]
        images += expected.count(image_id)
    assert images > 0

    # The default drops the conversations with images; the rest train on
    # every token.
    rows, _ = dump(g3moe_run, step, tokenizer_dir, chat, tmp_path / "dropped.jsonl")
    kept = [c for c in conversations if not has_image(c)]
    assert [r["input_ids"] for r in rows] == \
        [templated(hf_tokenizer, template, c)["input_ids"] for c in kept]
    assert all(r["labels"] == r["input_ids"] for r in rows)


def test_edge_cases_match_apply_chat_template(tmp_path, hf_tokenizer, template, step,
                                              tokenizer_dir, g3moe_run):
    data = write_jsonl(tmp_path / "edge.jsonl", [{"messages": c} for c in EDGE_CASES])
    rows, _ = dump(g3moe_run, step, tokenizer_dir, data, tmp_path / "rows.jsonl",
                   "--images", "mask")
    assert len(rows) == len(EDGE_CASES)
    image_id = hf_tokenizer.convert_tokens_to_ids("<start_of_image>")
    for conversation, row in zip(EDGE_CASES, rows):
        expected = templated(hf_tokenizer, template, conversation)["input_ids"]
        assert row["input_ids"] == expected, conversation
        assert row["labels"] == [IGNORE if t == image_id else t for t in expected]
        assert row["positions"] == list(range(len(expected)))
    # The cases exercise what they claim: the list system message's second
    # part is not rendered, and the image case has three image tokens.
    assert "Ignored" not in hf_tokenizer.decode(rows[1]["input_ids"])
    assert rows[2]["input_ids"].count(image_id) == 3


def test_assistant_only_labels_match_the_generation_mask(tmp_path, hf_tokenizer, template, step,
                                                         tokenizer_dir, g3moe_run):
    conversations = [c for c in EDGE_CASES if not has_image(c)]
    conversations += [json.loads(line)["messages"] for line in
                      (EXAMPLES / "data" / "chat.jsonl").read_text().splitlines()]
    conversations = [c for c in conversations if not has_image(c)]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in conversations])
    rows, _ = dump(g3moe_run, step, tokenizer_dir, data, tmp_path / "rows.jsonl",
                   "--assistant-only-loss")
    assert len(rows) == len(conversations)
    for conversation, row in zip(conversations, rows):
        out = templated(hf_tokenizer, template, conversation, return_assistant_tokens_mask=True)
        assert row["input_ids"] == out["input_ids"]
        expected = [t if m else IGNORE for t, m in zip(out["input_ids"], out["assistant_masks"])]
        assert row["labels"] == expected, conversation
    assert any(any(l != IGNORE for l in r["labels"]) for r in rows)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "system", "content": "late"}],
])
def test_broken_alternation_is_rejected_by_both(tmp_path, hf_tokenizer, template, step,
                                                tokenizer_dir, g3moe_run, messages):
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="alternate"):
        hf_tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": messages}])
    proc = g3moe_run(step, "--data", data, "--tokenizer", tokenizer_dir, "--dump-data",
                     tmp_path / "rows.jsonl", check=False)
    assert proc.returncode == 1, proc.stdout
    assert f"{data}:1: messages[" in proc.stderr
    assert not (tmp_path / "rows.jsonl").exists()
