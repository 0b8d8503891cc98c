"""TensorBoard's own reader parses the event files g3moe-run writes and finds
the logged scalars at the logged steps, with metrics.jsonl's values (rounded
to float32, as TensorBoard stores them)."""
import json

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import EXAMPLES


def test_event_file_holds_the_logged_scalars(tmp_path, g3moe_compile, g3moe_run):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--quiet", "--seq-len", "16",
                  "--micro-batch", "2", "--set", "lora_r=4", "--set", "lora_alpha=16",
                  "-o", step)
    out = tmp_path / "out"
    g3moe_run(step, "--data", EXAMPLES / "data" / "memorize.jsonl", "--max-steps", "6",
              "--logging-steps", "2", "--learning-rate", "1e-2", "--test-size", "0.25",
              "--eval-steps", "3", "--output-dir", out)

    events = list((out / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert acc.file_version == 2.0  # parsed from "brain.Event:2"

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if "loss" in l]
    evals = [l for l in lines if "eval_loss" in l]
    assert [l["step"] for l in train] == [2, 4, 6]
    assert [l["step"] for l in evals] == [3, 6]

    tags = set(acc.Tags()["scalars"])
    expected = {
        "train/loss": (train, "loss"),
        "train/learning_rate": (train, "learning_rate"),
        "train/grad_norm": (train, "grad_norm"),
        "train/tokens_per_second": (train, "tokens_per_second"),
        "eval/loss": (evals, "eval_loss"),
        "eval/mean_token_accuracy": (evals, "eval_mean_token_accuracy"),
    }
    assert set(expected) <= tags, tags
    for tag, (entries, key) in expected.items():
        scalars = acc.Scalars(tag)
        assert [s.step for s in scalars] == [e["step"] for e in entries], tag
        for s, e in zip(scalars, entries):
            assert s.value == float(np.float32(e[key])), (tag, s.step, s.value, e[key])
            assert s.wall_time > 1.6e9
    # Wall times never go back.
    walls = [s.wall_time for s in acc.Scalars("train/loss")]
    assert walls == sorted(walls)


def test_a_resumed_run_writes_a_second_event_file(tmp_path, g3moe_compile, g3moe_run):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-gemma3" / "config.json", "--quiet", "--seq-len", "16",
                  "--micro-batch", "2", "--set", "finetuning=full", "-o", step)
    out = tmp_path / "out"
    common = ["--data", EXAMPLES / "data" / "memorize.jsonl", "--max-steps", "4",
              "--logging-steps", "1", "--save-steps", "2", "--output-dir", out]
    g3moe_run(step, *common, "--stop-after-steps", "2")
    g3moe_run(step, *common, "--resume")
    events = sorted((out / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 2
    steps = []
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        steps.append([s.step for s in acc.Scalars("train/loss")])
    assert sorted(steps) == [[1, 2], [3, 4]]
