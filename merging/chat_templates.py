"""mergekit's `chat_template:` key: a named template, "auto", or a Jinja template given inline.

The merged tokenizer gets it as `chat_template.jinja` (which transformers reads before any
`chat_template` in tokenizer_config.json; that key is dropped so the two cannot disagree).
"auto" takes the template most of the inputs share (none: the copied tokenizer is left as it is).
The named templates are the public formats of those model families, written here.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from merging.method import MergeConfigError

NAMED = {
    "chatml": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
               "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
               "{% endif %}"),
    "llama3": ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "mistral": ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
                "{{ message['content'] + eos_token }}{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}"
                "{% endfor %}"),
    "alpaca": ("{% for message in messages %}{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + "
               "message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + "
               "message['content'] + eos_token + '\\n\\n' }}{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}"
               "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"),
}
FILE = "chat_template.jinja"


def check(value: object) -> str | None:
    """Validate the config value (before any tensor is read)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MergeConfigError(f"chat_template must be a template name, 'auto' or a Jinja template, got {value!r}")
    if value == "auto" or value in NAMED:
        return value
    if "{" not in value or len(value) < 20:
        raise MergeConfigError(f"chat_template {value!r}: not a known name ({', '.join(sorted(NAMED))}, auto) and "
                               "not a Jinja template")
    return value


def _template_of(folder: Path) -> str | None:
    if (folder / FILE).is_file():
        return (folder / FILE).read_text().strip()
    conf = folder / "tokenizer_config.json"
    if conf.is_file():
        t = json.loads(conf.read_text()).get("chat_template")
        return t.strip() if isinstance(t, str) and t.strip() else None
    return None


def write(value: str | None, inputs: list[Path], dest: Path) -> None:
    """Give the tokenizer in `dest` the configured template (inputs: the merge's model folders)."""
    if value is None:
        return
    if value == "auto":
        found = [t for t in map(_template_of, inputs) if t]
        if not found:
            return
        value = Counter(found).most_common(1)[0][0]
    template = NAMED.get(value, value)
    conf = dest / "tokenizer_config.json"
    if conf.is_file():
        data = json.loads(conf.read_text())
        if data.pop("chat_template", None) is not None:
            conf.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    (dest / "chat_template.json").unlink(missing_ok=True)  # multi-template files would compete with it
    (dest / FILE).write_text(template)
