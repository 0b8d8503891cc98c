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
