"""CLI actions of the point-cloud modality."""

from mimx.actions import Action

ACTIONS = {
    "pretrain": Action("Point-MAE pretraining on point-cloud shards or a file list (hydra overrides; resumes "
                       "automatically)", "mimx.modalities.points.pretrain:pretrain", config="pretrain"),
    "shards": Action("write a folder of clouds/meshes (class subfolders = labels) or a csv list as tar shards",
                     "mimx.modalities.points.shards:main"),
    "eval": Action("evaluate an encoder on labelled clouds: svm (frozen features), linear, knn, attentive, or finetune "
                   "with voting", "mimx.modalities.points.evaluate:evaluate", config="eval", positional="protocol"),
    "visualize": Action("reconstruction PNG and .ply files from a checkpoint and clouds (files, folders or shards)",
                        "mimx.modalities.points.visualize:main"),
    "export": Action("export a checkpoint's encoder (safetensors + config.json)", "mimx.modalities.points.export:main"),
}
