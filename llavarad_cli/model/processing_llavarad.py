"""Exact preprocessing for a folder written by ``llavarad export``; copied into it and used only when the user
loads with ``AutoProcessor.from_pretrained(folder, trust_remote_code=True)``.

LLaVA-Rad's images went through open_clip's eval transform: shortest side resized with PIL bicubic, then
torchvision's centre crop, which rounds the crop offset half to even. transformers' image processors round it
down, so where the resized long side exceeds the crop by 3 (mod 4) pixels their crop sits one pixel off. This
processor is transformers' own LLaVA processor with its PIL CLIP image processor, the crop rounded as
torchvision does. Imports transformers only.
"""

from transformers import LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil


class LlavaRadImageProcessor(CLIPImageProcessorPil):
    def center_crop(self, image, size, **kwargs):
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)  # padding: transformers and torchvision agree
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top:top + size.height, left:left + size.width]


class LlavaRadProcessor(LlavaProcessor):
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        processor = super().from_pretrained(*args, **kwargs)
        skip = ("image_processor_type", "processor_class", "auto_map", "backend")
        settings = {k: v for k, v in processor.image_processor.to_dict().items() if k not in skip}
        processor.image_processor = LlavaRadImageProcessor(**settings)
        return processor
