"""CLI actions of the image modality."""

from mimx.actions import Action

ACTIONS = {
    "pretrain": Action("MAE, SimMIM, MaskFeat or BEiT-style pretraining on image shards (hydra overrides; "
                       "resumes automatically)", "mimx.modalities.image.pretrain:pretrain", config="pretrain"),
    "codebook": Action("fit the k-means codebook of patches that BEiT-style pretraining (method=beit) predicts",
                       "mimx.modalities.image.codebook:fit", config="codebook"),
    "shards": Action("write an image folder (class subfolders = labels) or a csv list as tar shards",
                     "mimx.modalities.image.shards:main"),
    "eval": Action("evaluate an encoder on labelled shards: knn, linear or attentive (probes) or finetune",
                   "mimx.modalities.image.evaluate:evaluate", config="eval", positional="protocol"),
    "visualize": Action("reconstruction figure from a checkpoint and images (files, folders or shards)",
                        "mimx.modalities.image.visualize:main"),
    "export": Action("export a checkpoint's encoder as a timm ViT (safetensors + timm arguments)",
                     "mimx.modalities.image.export:main"),
}
