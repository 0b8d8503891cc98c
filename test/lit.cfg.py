# lit configuration of the g3moe IR and tool tests.
import os

import lit.formats
from lit.llvm import llvm_config

config.name = "G3MOE"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.g3moe_obj_root, "test")
config.excludes = ["CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py", "unittests",
                   "Inputs", "reference", "e2e", "gpu"]
config.environment["FILECHECK_OPTS"] = "-enable-var-scope --allow-unused-prefixes=false"

llvm_config.use_default_substitutions()
config.substitutions.append(("%examples", os.path.join(config.g3moe_src_root, "examples")))
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.add_tool_substitutions(["g3moe-opt", "g3moe-compile", "g3moe-run"],
                                   [config.g3moe_tools_dir, config.llvm_tools_dir])

# g3moe-run's --device defaults to auto (the GPU where there is one); the
# tool tests check the CPU reference backend's exact results, so they pin it.
# Tests of --device pass the flag, which wins over the variable.
config.environment["G3MOE_DEVICE"] = "cpu"


def gpu_visible():
    """Whether an NVIDIA GPU is visible here (nvidia-smi lists one and
    CUDA_VISIBLE_DEVICES does not hide them all)."""
    import shutil
    import subprocess
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


# `cuda-device`: --device cuda can run here (tests of its absence skip).
if gpu_visible():
    config.available_features.add("cuda-device")
