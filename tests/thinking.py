"""Chat templates shaped like those of the families that think first, cut down to what matters
here: how the generation prompt opens (or closes) the `<think>` block, and the on/off switch."""

from __future__ import annotations

_TURNS = ("{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
          "{%- endfor %}")

# Qwen3: `enable_thinking=False` renders an empty, closed block for the model to continue after.
QWEN3_STYLE = _TURNS + ("{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                        "{%- if enable_thinking is defined and enable_thinking is false %}"
                        "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")

# DeepSeek-R1 distills: the prompt itself opens the block, so the reply starts inside it.
R1_STYLE = _TURNS + "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"

# SmolLM3-like soft switch: `/no_think` in the system message turns thinking off.
SWITCH_STYLE = _TURNS + ("{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                         "{%- if messages[0].role == 'system' and '/no_think' in messages[0].content %}"
                         "{{ '<think>\\n\\n</think>\\n' }}{%- endif %}{%- endif %}")
