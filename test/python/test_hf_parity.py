"""g3moe's CPU backend against transformers on tiny random Gemma-3 checkpoints
that transformers writes with save_pretrained: the same loss and the same
gradient of every parameter on a padded micro-batch (several shapes: GQA, a
sliding window that binds, a global layer with linear RoPE scaling, MHA,
softcapping, an untied head), a multimodal `gemma3` checkpoint whose text part
is loaded, g3moe's own HF export read back by transformers, and the same loss
trajectory over a few AdamW steps of full fine-tuning."""
import json

import pytest
import torch

import hf_tiny

SEQ = 12
LENGTHS = (12, 7, 12)   # the second row is padded

SHAPES = {
    # GQA 4q/2kv; window 4 < 12 binds on layers 0 and 2; layer 1 global with
    # linear RoPE scaling x4 and its own base.
    "gqa_window_global_linear": dict(
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    # MHA, the layout from sliding_window_pattern 2 (layers 1 and 3 global),
    # an untied head, final-logit softcapping, head_dim * heads != hidden.
    "mha_pattern_untied_softcap": dict(
        num_hidden_layers=4, num_key_value_heads=4, head_dim=32, query_pre_attn_scalar=24,
        layer_types=None, sliding_window_pattern=2, sliding_window=3,
        tie_word_embeddings=False, final_logit_softcapping=5.0, rms_norm_eps=1e-5,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e4},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e3}}),
    # One kv head shared by all queries. (No attn_logit_softcapping:
    # transformers' Gemma-3 stores it but never applies it, while g3moe honours
    # it, docs/config.md.)
    "mqa": dict(
        num_key_value_heads=1, num_attention_heads=2, intermediate_size=96,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
}


def compile_full_fp32(g3moe_compile, config_json, step, *extra):
    g3moe_compile(config_json, "--quiet", "--fp32", "--set", "finetuning=full",
                  "--set", "test_size=0", "--seq-len", str(SEQ),
                  "--micro-batch", str(len(LENGTHS)), *extra, "-o", step)
    return step


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_loss_and_gradients_match_transformers(tmp_path, g3moe_compile, g3moe_run, shape):
    config = hf_tiny.text_config(**SHAPES[shape])
    model = hf_tiny.causal_lm(config, seed=1)
    ckpt = hf_tiny.save(model, tmp_path / "ckpt")
    rows = hf_tiny.make_rows(2, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)

    step = compile_full_fp32(g3moe_compile, ckpt / "config.json", tmp_path / "step.bin")
    dump = tmp_path / "grads.safetensors"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--dump-gradients", dump)
    ours = hf_tiny.read_dump(dump)
    hf_tiny.assert_inputs_match(ours, rows, SEQ)

    loss, grads, _, num_items = hf_tiny.reference(model, rows, SEQ)
    # The reference is HF's own loss with num_items_in_batch.
    ids, mask, labels = hf_tiny.batch(rows, SEQ)
    with torch.no_grad():
        hf_loss = model(input_ids=ids, attention_mask=mask, labels=labels,
                        num_items_in_batch=num_items).loss.item()
    assert hf_loss == pytest.approx(loss, rel=1e-5)
    assert ours["loss"][0] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    hf_tiny.assert_grads_close(ours, grads)


def test_the_window_and_padding_matter(tmp_path, g3moe_compile, g3moe_run):
    """Guards the comparison itself: a model without the sliding window (or
    one that attends to padding) gives a different loss, so the match above
    is not an accident of a window that never binds."""
    config = hf_tiny.text_config(**SHAPES["gqa_window_global_linear"])
    model = hf_tiny.causal_lm(config, seed=1)
    rows = hf_tiny.make_rows(2, config.vocab_size, SEQ, LENGTHS)
    loss, _, _, _ = hf_tiny.reference(model, rows, SEQ, grads=False)
    wide = hf_tiny.text_config(**dict(SHAPES["gqa_window_global_linear"], sliding_window=SEQ))
    wide_model = hf_tiny.causal_lm(wide, seed=1)
    wide_loss, _, _, _ = hf_tiny.reference(wide_model, rows, SEQ, grads=False)
    assert abs(wide_loss - loss) > 1e-3


def test_multimodal_checkpoint_loads_the_text_model(tmp_path, g3moe_compile, g3moe_run):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    text = hf_tiny.text_config(**SHAPES["gqa_window_global_linear"])
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                          mm_tokens_per_image=4)
    config._attn_implementation = "eager"
    torch.manual_seed(3)
    model = hf_tiny.randomize(Gemma3ForConditionalGeneration(config).float(), 3)
    ckpt = hf_tiny.save(model, tmp_path / "mm")
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "gemma3"

    # The text model alone, with the wrapper's weights, as the reference.
    from transformers import Gemma3ForCausalLM
    text_model = Gemma3ForCausalLM(text).float()
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("model.language_model."):
            state["model." + name[len("model.language_model."):]] = value
    state["lm_head.weight"] = model.lm_head.weight
    missing, unexpected = text_model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}

    rows = hf_tiny.make_rows(4, text.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    step = compile_full_fp32(g3moe_compile, ckpt / "config.json", tmp_path / "step.bin")
    dump = tmp_path / "grads.safetensors"
    out = g3moe_run(step, "--weights", ckpt, "--data", data, "--dump-gradients", dump)
    assert "vision tower / projector tensors ignored" in out.stdout
    ours = hf_tiny.read_dump(dump)
    loss, grads, _, _ = hf_tiny.reference(text_model, rows, SEQ)
    # The wrapper computes the same on text (no pixel values).
    ids, mask, labels = hf_tiny.batch(rows, SEQ)
    with torch.no_grad():
        wrapped = hf_tiny.loss_of(model(input_ids=ids, attention_mask=mask).logits, labels,
                                  hf_tiny.shifted_count(labels)).item()
    assert wrapped == pytest.approx(loss, rel=1e-5)
    assert ours["loss"][0] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    hf_tiny.assert_grads_close(ours, grads)


def test_initial_weights_export_is_a_transformers_checkpoint(tmp_path, g3moe_compile, g3moe_run):
    """--save-initial-weights writes config.json + model.safetensors that
    transformers loads, and transformers' loss on them is g3moe's."""
    from transformers import AutoModelForCausalLM

    config = hf_tiny.text_config(**SHAPES["mha_pattern_untied_softcap"])
    ckpt = hf_tiny.save(hf_tiny.causal_lm(config, seed=5), tmp_path / "ckpt")
    step = compile_full_fp32(g3moe_compile, ckpt / "config.json", tmp_path / "step.bin")
    export = tmp_path / "export"
    g3moe_run(step, "--seed", "7", "--save-initial-weights", export)
    written = json.loads((export / "config.json").read_text())
    assert written["model_type"] == "gemma3_text"
    assert written["layer_types"] == config.layer_types
    assert written["final_logit_softcapping"] == 5.0
    assert written["query_pre_attn_scalar"] == 24

    model = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32,
                                                 attn_implementation="eager")
    assert model.config.sliding_window == config.sliding_window
    assert model.config.rope_parameters["sliding_attention"]["rope_theta"] == 1e3
    rows = hf_tiny.make_rows(6, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    dump = tmp_path / "grads.safetensors"
    g3moe_run(step, "--seed", "7", "--data", data, "--dump-gradients", dump)
    loss, grads, _, _ = hf_tiny.reference(model, rows, SEQ)
    ours = hf_tiny.read_dump(dump)
    assert ours["loss"][0] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    hf_tiny.assert_grads_close(ours, grads)
    # And the exported checkpoint loads back into the same step.
    g3moe_run(step, "--weights", export, "--data", data, "--dump-gradients",
              tmp_path / "again.safetensors")
    again = hf_tiny.read_dump(tmp_path / "again.safetensors")
    assert again["loss"][0] == ours["loss"][0]


def trainer_losses(model, rows, steps, lr, micro_batch, accumulation):
    """The per-step losses transformers' own Trainer logs when it fine-tunes
    `model` fully for `steps` AdamW steps (constant lr, clipping at 1, weight
    decay 0.01 except on norms, fp32 on the CPU), the micro-batches padded to
    SEQ as g3moe pads them."""
    from transformers import Trainer, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    def collate(items):
        ids, mask, labels = hf_tiny.batch(items, SEQ)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    args = TrainingArguments(output_dir=None, max_steps=steps, learning_rate=lr,
                             lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
                             max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999,
                             adam_epsilon=1e-8, optim="adamw_torch",
                             per_device_train_batch_size=micro_batch,
                             gradient_accumulation_steps=accumulation, logging_steps=1,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0,
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_loss_trajectory_equals_transformers_trainer(tmp_path, g3moe_compile, g3moe_run):
    """Five AdamW steps of full fine-tuning, two micro-batches of two rows per
    step (every step sees the whole data, so the shuffles of the two trainers
    cannot differ): g3moe's logged losses are transformers' Trainer's within
    1e-4, with the loss divided by the window's cross-entropy terms as the
    Trainer does. The recipe's older count (`loss_denominator: unshifted`,
    one more per row) misses it by percents."""
    lr, steps, micro, accumulation = 3e-3, 5, 2, 2
    config = hf_tiny.text_config(**SHAPES["gqa_window_global_linear"])
    model = hf_tiny.causal_lm(config, seed=8)
    ckpt = hf_tiny.save(model, tmp_path / "ckpt")
    # Short rows and a masked prompt, where the two counts differ most.
    rows = hf_tiny.make_rows(9, config.vocab_size, SEQ, (12, 5, 8, 12))
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    g3moe_compile(ckpt / "config.json", "--quiet", "--fp32", "--set", "finetuning=full",
                  "--set", "test_size=0", "--seq-len", str(SEQ), "--micro-batch", str(micro),
                  "--set", f"learning_rate={lr}", "--set", "lr_scheduler_type=constant",
                  "--set", "warmup_ratio=0", "--set", "max_grad_norm=1.0",
                  "--set", "weight_decay=0.01",
                  "--set", f"gradient_accumulation_steps={accumulation}",
                  "-o", tmp_path / "step.bin")

    def ours(*extra):
        out = tmp_path / ("out" + "".join(extra))
        g3moe_run(tmp_path / "step.bin", "--weights", ckpt, "--data", data, "--max-steps",
                  str(steps), "--logging-steps", "1", "--output-dir", out, *extra)
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [m["loss"] for m in logged if "loss" in m and "step" in m]

    theirs = trainer_losses(model, [(list(i), list(l)) for i, l in rows], steps, lr, micro,
                            accumulation)
    assert len(theirs) == steps
    assert theirs[-1] < theirs[0] - 1e-3, "the reference did not train"
    shifted = ours()
    assert shifted == pytest.approx(theirs, rel=1e-4)

    unshifted = ours("--loss-denominator", "unshifted")
    _, _, labels = hf_tiny.batch(rows, SEQ)
    ratio = hf_tiny.shifted_count(labels) / int((labels != hf_tiny.IGNORE).sum())
    # The same first weights: the old count only rescales the first loss.
    assert unshifted[0] == pytest.approx(theirs[0] * ratio, rel=1e-4)
    assert all(abs(u - t) > 0.02 * t for u, t in zip(unshifted, theirs))


def test_sharded_checkpoint(tmp_path, g3moe_compile, g3moe_run):
    """A checkpoint transformers splits into shards (model.safetensors.index.json)."""
    config = hf_tiny.text_config(**SHAPES["gqa_window_global_linear"])
    model = hf_tiny.causal_lm(config, seed=12)
    ckpt = tmp_path / "sharded"
    model.save_pretrained(str(ckpt), safe_serialization=True, max_shard_size="40KB")
    assert (ckpt / "model.safetensors.index.json").exists()
    assert len(list(ckpt.glob("model-*.safetensors"))) > 2
    rows = hf_tiny.make_rows(13, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    step = compile_full_fp32(g3moe_compile, ckpt / "config.json", tmp_path / "step.bin")
    dump = tmp_path / "grads.safetensors"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--dump-gradients", dump)
    loss, _, _, _ = hf_tiny.reference(model, rows, SEQ, grads=False)
    assert hf_tiny.read_dump(dump)["loss"][0] == pytest.approx(loss, rel=1e-4, abs=1e-5)

    # A shard gone: the error names the index and the shard.
    shard = sorted(ckpt.glob("model-*.safetensors"))[1]
    shard.unlink()
    proc = g3moe_run(step, "--weights", ckpt, "--data", data, "--dump-gradients", dump,
                     check=False)
    assert proc.returncode == 1
    assert f"model.safetensors.index.json: shard '{shard.name}'" in proc.stderr


def test_bf16_lora_step_loads_an_fp32_checkpoint(tmp_path, g3moe_compile, g3moe_run):
    """The default step (bf16 weights, LoRA) converts the fp32 checkpoint on
    load; its loss is transformers' fp32 loss up to bf16 rounding, and its
    export is a bf16 checkpoint transformers loads."""
    from transformers import AutoModelForCausalLM

    config = hf_tiny.text_config(**SHAPES["gqa_window_global_linear"])
    model = hf_tiny.causal_lm(config, seed=14)
    ckpt = hf_tiny.save(model, tmp_path / "ckpt")
    rows = hf_tiny.make_rows(15, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    step = tmp_path / "bf16.step"
    g3moe_compile(ckpt / "config.json", "--quiet", "--seq-len", str(SEQ), "--micro-batch",
                  str(len(LENGTHS)), "--set", "test_size=0", "--set", "lora_r=4", "-o", step)
    dump = tmp_path / "grads.safetensors"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--dump-gradients", dump)
    ours = hf_tiny.read_dump(dump)
    loss, _, _, _ = hf_tiny.reference(model, rows, SEQ, grads=False)
    assert ours["loss"][0] == pytest.approx(loss, rel=2e-2)
    assert any(k.endswith("lora_B.weight") for k in ours)

    export = tmp_path / "export"
    g3moe_run(step, "--weights", ckpt, "--save-initial-weights", export)
    assert json.loads((export / "config.json").read_text())["dtype"] == "bfloat16"
    back = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32,
                                                attn_implementation="eager")
    for name, p in model.named_parameters():
        want = p.detach().to(torch.bfloat16).float()
        got = dict(back.named_parameters())[name].detach()
        assert torch.equal(got, want), name
