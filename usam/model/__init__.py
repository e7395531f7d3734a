"""U-SAM modules: adapter, SAM encoder wiring, decoder with up blocks, LoRA."""
from usam.model.config import CONFIGS, UsamConfig, get_config
from usam.model.features import ImageFeatures
from usam.model.lora import LoraQkv, apply_lora
from usam.model.usam import Usam, build_usam, extension_keys, used_skips

__all__ = ["CONFIGS", "UsamConfig", "get_config", "ImageFeatures", "LoraQkv", "apply_lora", "Usam",
           "build_usam", "extension_keys", "used_skips"]
