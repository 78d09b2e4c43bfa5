"""Object detection on scenes of Fashion-MNIST items (notebook 12, ``12_object_detection.ipynb``):
``scenes`` (the seeded scene generator), ``detector`` (a small CenterNet, ``encode``/``decode``),
``losses`` (CenterNet's loss, heatmap KD, fine-grained feature imitation), ``evaluate`` (COCO mAP
through pycocotools) and ``train`` (``train_detector``, alone or from a teacher)."""
from distill_utils.tasks.detection.detector import (
    MODELS,
    CenterNet,
    build_detector,
    decode,
    detect,
    encode,
    split_heads,
)
from distill_utils.tasks.detection.evaluate import coco_map, evaluate_detector
from distill_utils.tasks.detection.losses import (
    FeatureImitation,
    detection_loss,
    distill_detection_loss,
    heatmap_kd,
    imitation_mask,
)
from distill_utils.tasks.detection.scenes import SceneConfig, Scenes, make_scenes, scene_dataset
from distill_utils.tasks.detection.train import DetectorTrainConfig, train_detector

__all__ = ["MODELS", "CenterNet", "build_detector", "encode", "decode", "detect", "split_heads", "coco_map",
           "evaluate_detector", "FeatureImitation", "detection_loss", "distill_detection_loss", "heatmap_kd",
           "imitation_mask", "SceneConfig", "Scenes", "make_scenes", "scene_dataset", "DetectorTrainConfig",
           "train_detector"]
