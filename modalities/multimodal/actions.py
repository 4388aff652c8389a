"""CLI actions of the multi-modal modality."""

from mimx.actions import Action

ACTIONS = {
    "pretrain": Action("MultiMAE pretraining on aligned RGB / depth / segmentation shards (hydra overrides; "
                       "resumes automatically)", "mimx.modalities.multimodal.pretrain:pretrain", config="pretrain"),
    "shards": Action("write aligned folders (SRC/<modality>/<class>/<file>) as tar shards",
                     "mimx.modalities.multimodal.shards:main"),
    "eval": Action("dense probes from any input subset, frozen or fine-tuned (head.finetune=true): semseg (mIoU) "
                   "or depth (delta1, abs-rel)", "mimx.modalities.multimodal.evaluate:evaluate", config="eval",
                   positional="probe"),
    "export": Action("one input modality's path through the encoder (rgb, depth, ...) as a plain timm ViT, "
                     "checked to give the same features", "mimx.modalities.multimodal.export:main"),
    "visualize": Action("per-modality input / masked / prediction figure from a checkpoint and shards",
                        "mimx.modalities.multimodal.visualize:main"),
}
