"""The adapter files g3moe-run writes are what PEFT reads: tensor names as PEFT
names them (experts split out of their stacks), a LoraConfig PEFT accepts."""
import json

from peft import LoraConfig
from safetensors.numpy import load_file

from conftest import EXAMPLES


def test_lora_adapter_names_and_config(tmp_path, g3moe_compile, g3moe_run):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--quiet", "--seq-len", "16",
                  "--micro-batch", "2", "--set", "lora_r=4", "--set", "lora_alpha=16",
                  "-o", step)
    out = tmp_path / "out"
    g3moe_run(step, "--data", EXAMPLES / "data" / "memorize.jsonl", "--max-steps", "2",
              "--output-dir", out)

    tensors = load_file(str(out / "adapter_model.safetensors"))
    # 2 dense layers x 3 projections + 4 MoE layers x 4 experts x 3, A and B each.
    assert len(tensors) == 2 * (2 * 3 + 4 * 4 * 3)
    a = tensors["base_model.model.model.layers.2.moe.experts.3.down_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.2.moe.experts.3.down_proj.lora_B.weight"]
    assert a.shape == (4, 128) and b.shape == (64, 4)
    assert "base_model.model.model.layers.0.moe.gate_proj.lora_B.weight" in tensors
    assert not any("{e}" in name for name in tensors)

    config = LoraConfig.from_pretrained(str(out))
    assert config.r == 4 and config.lora_alpha == 16
    assert set(config.target_modules) == {"gate_proj", "up_proj", "down_proj"}
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
