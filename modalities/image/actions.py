"""CLI actions of the image modality."""

from mimx.actions import Action

ACTIONS = {
    "pretrain": Action("MAE pretraining on image shards (hydra overrides; resumes automatically)",
                       "mimx.modalities.image.pretrain:pretrain", config="pretrain"),
    "shards": Action("write an image folder (class subfolders = labels) as tar shards",
                     "mimx.modalities.image.shards:main"),
    "export": Action("export a checkpoint's encoder as a timm ViT (safetensors + timm arguments)",
                     "mimx.modalities.image.export:main"),
}
