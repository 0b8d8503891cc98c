"""LoRA trained by g3moe on a transformers checkpoint, read back by the real
tools: transformers loads `--merge`'s `<out>/merged` checkpoint, PEFT loads the
base checkpoint plus g3moe's adapter, and both give the logits g3moe computes
for the trained model (eval_logits of the last checkpoint)."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import hf_tiny

SEQ = 12
LENGTHS = (12, 8, 12)
STEPS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Base checkpoint, data, and a g3moe LoRA run with --merge; g3moe's logits
    of the trained model."""
    from conftest import BIN, run_tool

    tmp = tmp_path_factory.mktemp("merge")
    config = hf_tiny.text_config(**{
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0,
                                               "rope_theta": 1e6},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}})
    base = hf_tiny.save(hf_tiny.causal_lm(config, seed=21), tmp / "base")
    rows = hf_tiny.make_rows(22, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp / "data.jsonl", rows)
    step = tmp / "lora.step"
    run_tool(BIN / "g3moe-compile", base / "config.json", "--quiet", "--fp32", "--emit-logits",
             "--seq-len", SEQ, "--micro-batch", len(LENGTHS), "--set", "lora_r=4",
             "--set", "lora_alpha=8", "--set", "lora_dropout=0.05",
             "--set", "lora_target_modules=all-linear", "--set", "test_size=0",
             "--set", "learning_rate=0.02", "--set", "lr_scheduler_type=constant",
             "--set", "warmup_ratio=0", "-o", step)
    out = tmp / "out"
    log = run_tool(BIN / "g3moe-run", step, "--weights", base, "--data", data, "--max-steps",
                   STEPS, "--save-steps", STEPS, "--output-dir", out, "--merge")
    assert "merged" in log.stdout
    dump = tmp / "logits.safetensors"
    run_tool(BIN / "g3moe-run", step, "--weights", base, "--resume",
             out / f"checkpoint-{STEPS}", "--data", data, "--dump-logits", dump)
    before = tmp / "before.safetensors"
    run_tool(BIN / "g3moe-run", step, "--weights", base, "--data", data, "--dump-logits", before)
    return dict(base=base, out=out, rows=rows, logits=hf_tiny.read_dump(dump),
                untrained=hf_tiny.read_dump(before))


def real_positions(rows):
    _, mask, _ = hf_tiny.batch(rows, SEQ)
    return mask.bool().numpy()


def hf_logits(model, rows):
    ids, mask, _ = hf_tiny.batch(rows, SEQ)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float().numpy()


def assert_logits_close(a, b, where, atol=2e-4):
    diff = np.abs(a[where] - b[where]).max()
    scale = np.abs(b[where]).max()
    assert diff <= atol * max(1.0, scale), f"max logit difference {diff:.3g} (scale {scale:.3g})"


def test_training_changed_the_model(trained):
    """Guards the comparisons below: the adapters are not still zero."""
    where = real_positions(trained["rows"])
    hf_tiny.assert_inputs_match(trained["logits"], trained["rows"], SEQ)
    assert np.abs(trained["logits"]["logits"][where] -
                  trained["untrained"]["logits"][where]).max() > 1e-2


def test_untrained_logits_are_the_base_model(trained):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(trained["base"]), dtype=torch.float32,
                                                attn_implementation="eager")
    assert_logits_close(trained["untrained"]["logits"], hf_logits(base, trained["rows"]),
                        real_positions(trained["rows"]))


def test_transformers_loads_the_merged_checkpoint(trained):
    from transformers import AutoModelForCausalLM

    merged_dir = trained["out"] / "merged"
    tensors = load_file(str(merged_dir / "model.safetensors"))
    assert not any("lora" in name for name in tensors)
    assert json.loads((merged_dir / "config.json").read_text())["model_type"] == "gemma3_text"
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32,
                                                  attn_implementation="eager")
    where = real_positions(trained["rows"])
    assert_logits_close(hf_logits(merged, trained["rows"]), trained["logits"]["logits"], where)
    # Its loss is g3moe's eval of the trained model too.
    ids, mask, labels = hf_tiny.batch(trained["rows"], SEQ)
    num_items = int((labels != hf_tiny.IGNORE).sum())
    with torch.no_grad():
        loss = merged(input_ids=ids, attention_mask=mask, labels=labels,
                      num_items_in_batch=num_items).loss.item()
    ours = hf_tiny.loss_of(torch.from_numpy(trained["logits"]["logits"]), labels,
                           num_items).item()
    assert loss == pytest.approx(ours, rel=1e-4)


def test_peft_loads_the_adapter(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(trained["base"]), dtype=torch.float32,
                                                attn_implementation="eager")
    model = PeftModel.from_pretrained(base, str(trained["out"])).eval()
    # Every adapter tensor g3moe wrote was taken up (PEFT warns, not fails,
    # on missing keys): compare with the model's LoRA weights by name.
    written = load_file(str(trained["out"] / "adapter_model.safetensors"))
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(written) == len(state) > 0
    for name, value in written.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        np.testing.assert_array_equal(state[key].numpy(), value)
    where = real_positions(trained["rows"])
    peft_logits = hf_logits(model, trained["rows"])
    assert_logits_close(peft_logits, trained["logits"]["logits"], where)
    # PEFT's own merge gives the merged checkpoint's weights.
    merged = load_file(str(trained["out"] / "merged" / "model.safetensors"))
    peft_merged = model.merge_and_unload().state_dict()
    for name, value in merged.items():
        np.testing.assert_allclose(peft_merged[name].numpy(), value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
