"""The ``README.md`` model card ``llavarad export`` writes into the exported folder."""

from __future__ import annotations

from typing import Any

LICENCE_NOTICE = (
    "**Research use only.** These weights derive from LLaVA-Rad, released by Microsoft under the Microsoft "
    "Research License (non-commercial research use), and from the base language model named above under its own "
    "licence; models trained on MIMIC-CXR are also bound by the PhysioNet credentialed data use agreement. "
    "Generated findings are not a medical device output and must not be used for clinical decisions."
)

#: The usage snippet, also in llavarad's README ("Use with other tools") and run as written by its tests.
USAGE = '''\
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

folder = "{folder}"
model = AutoModelForImageTextToText.from_pretrained(folder)   # LlavaForConditionalGeneration
# trust_remote_code: the folder's processing_llavarad.py, open_clip's exact crop (see the model card)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
image = Image.open("{image}").convert("RGB")
text = ("Provide a description of the findings in the radiology image given the following indication: "
        "shortness of breath")   # or, without a reason: "Provide a description of the findings in the radiology image."
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": text}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=image, text=prompt, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=256, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
'''


def usage_snippet(folder: str = "path/to/export", image: str = "chest_xray.png") -> str:
    return USAGE.format(folder=folder, image=image)


def model_card(source: dict[str, Any], parameters: int) -> str:
    def value(key: str) -> str:
        item = source.get(key)
        return f"`{item}`" if item not in (None, "") else "(recorded in the source)"

    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [llava, radiology, chest-x-ray, llavarad]",
        "license: other",
        "---",
        "",
        "# LLaVA-Rad (transformers export)",
        "",
        "A chest X-ray findings model in transformers' own `LlavaForConditionalGeneration` layout "
        "(DINOv2 vision tower, 2-layer GELU projector, LLaMA language model; LoRA merged), written by "
        f"`llavarad export` (llavarad {source.get('llavarad_version')}).",
        "",
        "## Provenance",
        "",
        f"- weights: {value('model')} ({source.get('layout')} layout)",
        f"- base language model: {value('model_base')}",
        f"- vision tower: {value('vision_tower')}; projector: `{source.get('projector_type')}`; "
        f"prompt template: `{source.get('template')}`",
        f"- dtype: `{source.get('dtype')}`; parameters: {parameters:,}",
        "",
        "## Licence",
        "",
        LICENCE_NOTICE,
        "",
        "## Usage",
        "",
        "```python",
        usage_snippet().rstrip(),
        "```",
        "",
        "With `trust_remote_code=True` the processor is `processing_llavarad.py` in this folder: transformers' "
        "own LLaVA processor and PIL CLIP image processor (shortest side resized with PIL bicubic, centre crop, "
        "OpenAI-CLIP mean/std), the crop offset rounded half to even as torchvision's crop in the released "
        "preprocessing does. Stock transformers, `AutoProcessor.from_pretrained(folder, backend=\"pil\")`, "
        "rounds it down: on images whose resized long side exceeds the crop by 3 (mod 4) pixels its crop sits "
        "one pixel over; the default torchvision backend also resizes differently (a grey level or two). "
        "`llavarad infer --model <this folder>` uses the original preprocessing exactly.",
        "",
        "The chat template renders the Vicuna v1 prompt; the `<image>` token is expanded to one position per "
        "image patch. Greedy decoding with 256 new tokens is the paper's evaluation setting.",
        "",
    ]
    return "\n".join(lines)
