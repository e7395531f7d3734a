"""Anatomy labels of the phantom (one per structure) and the HU range of each tissue.

The anatomy map is what the scanner model turns into HU (SynthSeg-style: one intensity draw
per tissue and case, inside the range stated here); labels 1/2 of the ground truth are derived
from it (rectal wall and tumour inside the labelled rectum).
"""
from __future__ import annotations

# tissue -> (non-contrast range, portal venous range) of the per-case mean HU
TISSUE_HU: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "air": ((-1010, -990), (-1010, -990)),
    "gas": ((-1000, -880), (-1000, -880)),
    "fat": ((-120, -85), (-120, -85)),
    "skin": ((20, 60), (30, 70)),
    "fascia": ((0, 40), (10, 50)),
    "muscle": ((35, 60), (45, 70)),
    "cortical": ((900, 1500), (900, 1500)),
    "cancellous": ((140, 320), (140, 320)),
    "marrow": ((-60, 30), (-60, 30)),
    "cartilage": ((50, 100), (50, 100)),
    "csf": ((-10, 20), (-10, 20)),
    "nerve": ((-20, 35), (-20, 35)),
    "urine": ((0, 15), (0, 15)),
    "bladder_wall": ((30, 50), (50, 85)),
    "prostate": ((30, 50), (40, 75)),
    "seminal_vesicle": ((15, 40), (25, 55)),
    "uterus": ((35, 55), (75, 130)),
    "vagina": ((35, 50), (55, 100)),
    "ovary": ((20, 40), (30, 60)),
    "artery": ((35, 55), (150, 240)),
    "vein": ((35, 55), (120, 190)),
    "node": ((25, 45), (40, 80)),
    "bowel_wall": ((30, 50), (50, 90)),
    "bowel_fluid": ((0, 25), (0, 25)),
    "faeces": ((-110, 30), (-110, 30)),
    "tumour": ((25, 70), (40, 140)),   # drawn as wall + contrast; the range bounds the result
    "table": ((150, 400), (150, 400)),
    "table_core": ((-950, -750), (-950, -750)),
    "metal": ((2800, 3071), (2800, 3071)),
}

# (name, tissue) in label order; label 0 is the air around the patient
_STRUCTURES: list[tuple[str, str]] = [
    ("background", "air"),
    ("table", "table"), ("table_core", "table_core"),
    ("skin", "skin"), ("subcutaneous_fat", "fat"), ("pelvic_fat", "fat"), ("ischioanal_fat", "fat"),
    ("mesorectal_fat", "fat"), ("mesorectal_fascia", "fascia"),
    ("other_muscle", "muscle"), ("gluteus_maximus", "muscle"), ("gluteus_medius", "muscle"),
    ("gluteus_minimus", "muscle"), ("iliopsoas", "muscle"), ("obturator_internus", "muscle"),
    ("piriformis", "muscle"), ("levator_ani", "muscle"), ("rectus_abdominis", "muscle"),
    ("anal_sphincter", "muscle"),
    ("sacrum", "cancellous"), ("sacrum_cortex", "cortical"), ("sacral_canal", "csf"),
    ("sacral_foramen", "nerve"),
    ("coccyx", "cancellous"), ("coccyx_cortex", "cortical"),
    ("iliac_wing", "cancellous"), ("iliac_wing_cortex", "cortical"),
    ("acetabulum", "cancellous"), ("acetabulum_cortex", "cortical"), ("hip_joint", "cartilage"),
    ("femoral_head", "cancellous"), ("femoral_head_cortex", "cortical"),
    ("femoral_neck", "cancellous"), ("femoral_neck_cortex", "cortical"),
    ("greater_trochanter", "cancellous"), ("greater_trochanter_cortex", "cortical"),
    ("femoral_shaft", "marrow"), ("femoral_shaft_cortex", "cortical"),
    ("pubis", "cancellous"), ("pubis_cortex", "cortical"), ("pubic_symphysis", "cartilage"),
    ("ischium", "cancellous"), ("ischium_cortex", "cortical"),
    ("bladder_wall", "bladder_wall"), ("urine", "urine"),
    ("prostate", "prostate"), ("seminal_vesicle", "seminal_vesicle"),
    ("uterus", "uterus"), ("vagina", "vagina"), ("ovary", "ovary"),
    ("iliac_artery", "artery"), ("iliac_vein", "vein"), ("lymph_node", "node"),
    ("rectum_wall", "bowel_wall"), ("rectum_folds", "bowel_fluid"), ("tumour", "tumour"),
    ("rectum_gas", "gas"), ("rectum_fluid", "bowel_fluid"), ("rectum_faeces", "faeces"),
    ("anal_canal", "bowel_wall"),
    ("sigmoid_wall", "bowel_wall"), ("small_bowel_wall", "bowel_wall"),
    ("bowel_gas", "gas"), ("bowel_fluid", "bowel_fluid"), ("bowel_faeces", "faeces"),
    ("prosthesis", "metal"),
]

NAMES: tuple[str, ...] = tuple(n for n, _ in _STRUCTURES)
TISSUE_OF: dict[str, str] = dict(_STRUCTURES)
L: dict[str, int] = {n: i for i, n in enumerate(NAMES)}   # name -> label id

# structures every case shows (sex-specific organs, prosthesis and content vary per case)
SEX_ORGANS = {"male": ("prostate", "seminal_vesicle"), "female": ("uterus", "vagina", "ovary")}
OPTIONAL = {"prosthesis", "lymph_node", "rectum_gas", "rectum_fluid", "rectum_faeces", "tumour",
            "rectum_folds", "bowel_gas", "bowel_fluid", "bowel_faeces", "table_core"}


def manifest_names() -> dict[str, str]:
    """Label id (as string, JSON keys) -> structure name, for the cohort manifest."""
    return {str(i): n for i, n in enumerate(NAMES)}
