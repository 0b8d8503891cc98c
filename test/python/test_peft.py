"""PEFT loads the checkpoints g3moe-run writes: a LoRA step on a tiny Gemma-3
checkpoint written by transformers' save_pretrained is trained a few steps
with --weights and --save-steps; PeftModel.from_pretrained(base,
checkpoint-N) loads adapter_model.safetensors and adapter_config.json with no
missing or unexpected adapter keys, and the PEFT model's loss and token
accuracy on the data are g3moe's own evaluation of the same checkpoint
(--eval-only --resume), and its logits are g3moe's --dump-logits --resume."""
import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import hf_tiny

SEQ = 12
LENGTHS = (12, 9, 12, 5)   # one micro-batch; rows 2 and 4 are padded
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@pytest.fixture
def trained(tmp_path, g3moe_compile, g3moe_run):
    config = hf_tiny.text_config()
    base = hf_tiny.causal_lm(config, seed=3)
    ckpt = hf_tiny.save(base, tmp_path / "base")
    rows = hf_tiny.make_rows(4, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    step = tmp_path / "step.bin"
    g3moe_compile(ckpt / "config.json", "--quiet", "--fp32", "--seq-len", str(SEQ),
                  "--micro-batch", str(len(LENGTHS)), "--set", "lora_r=4",
                  "--set", "lora_alpha=8", "--set", "lora_dropout=0",
                  "--set", f"lora_target_modules={TARGETS}", "--set", "test_size=0",
                  "--emit-logits", "-o", step)
    out = tmp_path / "out"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--max-steps", "4", "--save-steps", "3",
              "--learning-rate", "2e-2", "--lr-scheduler-type", "constant", "--output-dir", out)
    return dict(step=step, base=ckpt, data=data, rows=rows, out=out,
                checkpoint=out / "checkpoint-3")


def g3moe_eval(g3moe_run, trained, tmp_path):
    metrics = tmp_path / "eval.json"
    g3moe_run(trained["step"], "--weights", trained["base"], "--data", trained["data"],
              "--eval-only", "--resume", trained["checkpoint"], "--metrics-file", metrics)
    return json.loads(metrics.read_text())


def peft_model(trained):
    from peft import PeftModel
    from transformers import Gemma3ForCausalLM

    base = Gemma3ForCausalLM.from_pretrained(str(trained["base"]), dtype=torch.float32,
                                             attn_implementation="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(trained["checkpoint"]))
    problems = [str(w.message) for w in caught
                if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not problems, problems
    return model.eval()


def test_peft_loads_the_checkpoint_without_missing_or_unexpected_keys(trained):
    from peft import get_peft_model, LoraConfig, set_peft_model_state_dict
    from transformers import Gemma3ForCausalLM

    ckpt = trained["checkpoint"]
    config = LoraConfig.from_pretrained(str(ckpt))
    assert config.r == 4 and config.lora_alpha == 8
    assert set(config.target_modules) == set(TARGETS.split(","))

    base = Gemma3ForCausalLM.from_pretrained(str(trained["base"]), dtype=torch.float32)
    model = get_peft_model(base, config)
    tensors = load_file(str(ckpt / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, {k: torch.from_numpy(v) for k, v in tensors.items()})
    assert not result.unexpected_keys, result.unexpected_keys
    missing = [k for k in result.missing_keys if "lora_" in k]
    assert not missing, missing
    # 3 layers x 7 projections, A and B each.
    assert len(tensors) == 3 * 7 * 2
    # Every loaded adapter is the file's, and training moved B off zero.
    state = model.state_dict()
    for name, value in tensors.items():
        peft_name = name.replace(".lora_A.weight", ".lora_A.default.weight") \
                        .replace(".lora_B.weight", ".lora_B.default.weight")
        np.testing.assert_array_equal(state[peft_name].numpy(), value, err_msg=name)
        if "lora_B" in name:
            assert np.abs(value).max() > 0, name

    loaded = peft_model(trained)
    assert loaded.peft_config["default"].r == 4


def test_peft_loss_and_accuracy_equal_g3moe_eval(trained, g3moe_run, tmp_path):
    ours = g3moe_eval(g3moe_run, trained, tmp_path)
    model = peft_model(trained)
    ids, mask, labels = hf_tiny.batch(trained["rows"], SEQ)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        with model.disable_adapter():
            base_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    # The adapter matters, so the match below tests it.
    assert abs(out.loss.item() - base_loss) > 1e-3, (out.loss.item(), base_loss)
    assert ours["eval_loss"] == pytest.approx(out.loss.item(), rel=2e-5, abs=1e-6)

    # TRL's mean_token_accuracy: argmax of the shifted logits against the labels.
    pred = out.logits[:, :-1, :].argmax(-1)
    target = labels[:, 1:]
    counted = target != hf_tiny.IGNORE
    accuracy = ((pred == target) & counted).sum().item() / counted.sum().item()
    assert ours["eval_tokens"] == counted.sum().item()
    assert ours["eval_mean_token_accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_peft_logits_equal_g3moe_logits(trained, g3moe_run, tmp_path):
    dump = tmp_path / "logits.safetensors"
    g3moe_run(trained["step"], "--weights", trained["base"], "--data", trained["data"],
              "--resume", trained["checkpoint"], "--dump-logits", dump)
    ours = load_file(str(dump))["logits"]
    model = peft_model(trained)
    ids, mask, _ = hf_tiny.batch(trained["rows"], SEQ)
    with torch.no_grad():
        theirs = model(input_ids=ids, attention_mask=mask).logits.numpy()
        with model.disable_adapter():
            untrained = model(input_ids=ids, attention_mask=mask).logits.numpy()
    real = mask.numpy().astype(bool)
    # --dump-logits applies --resume: the logits are the trained adapter's,
    # not the base model's (which they would equal if the checkpoint were
    # ignored).
    assert np.abs(theirs[real] - untrained[real]).max() > 1e-2
    assert not np.allclose(ours[real], untrained[real], rtol=1e-4, atol=1e-4), \
        "--dump-logits gave the base model's logits: the checkpoint was not applied"
    np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-4, atol=1e-4)
