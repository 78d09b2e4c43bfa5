"""Tasks beyond image classification, built on the taught core: ``transformer`` (a small Vision
Transformer, its width and depth pruning: notebook 11) and ``detection`` (scenes of Fashion-MNIST
items, a small one-stage detector, its distillation losses and COCO-style mAP: notebook 12)."""


def task_models() -> dict:
    """Every task's model builders by name (checkpoints rebuild these as well as ``models.MODELS``)."""
    from distill_utils.tasks.detection import MODELS as detection
    from distill_utils.tasks.transformer import MODELS as transformer
    return {**detection, **transformer}
