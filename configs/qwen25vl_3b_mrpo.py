r"""The paper's MRPO recipe on Qwen2.5-VL-3B-Instruct (same settings as 7B).

  stepjax train --config=configs/qwen25vl_3b_mrpo.py:mesh=v5p8 ...

Variants as in qwen25vl_7b_mrpo.py: algo=, mesh=v5e16|v5p8|cpu, process=.
"""

import importlib.util
import pathlib

_SEVEN_B = pathlib.Path(__file__).with_name("qwen25vl_7b_mrpo.py")


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location("qwen25vl_7b_mrpo", _SEVEN_B)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  arg = f"{arg},size=3b" if arg else "size=3b"
  return module.get_config(arg)
