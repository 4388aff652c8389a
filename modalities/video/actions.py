"""CLI actions of the video modality."""

from mimx.actions import Action

ACTIONS = {
    "pretrain": Action("VideoMAE pretraining on video shards or a file list (hydra overrides; resumes "
                       "automatically)", "mimx.modalities.video.pretrain:pretrain", config="pretrain"),
    "shards": Action("write a video folder (class subfolders = labels) or a csv list as tar shards, optionally "
                     "re-encoded to a short side and keyframe interval", "mimx.modalities.video.shards:main"),
    "eval": Action("evaluate an encoder on labelled clips: knn, linear or attentive (probes) or finetune, "
                   "multi-view testing",
                   "mimx.modalities.video.evaluate:evaluate", config="eval", positional="protocol"),
    "visualize": Action("reconstruction PNG strip and GIF/mp4 from a checkpoint and videos (files, folders or "
                        "shards)", "mimx.modalities.video.visualize:main"),
    "export": Action("export a checkpoint's encoder (safetensors with timm ViT names + config.json)",
                     "mimx.modalities.video.export:main"),
}
