"""Matplotlib figures used across the notebooks. Each function returns the figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def show_examples(split, classes, per_class: int = 8, mean=(0.0,), std=(1.0,)):
    """A grid with one row per class and ``per_class`` images in each (notebook 01)."""
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95))
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    for c, row in enumerate(axes):
        idx = (split.y == c).nonzero().flatten()[:per_class]
        for ax, i in zip(row, idx.tolist()):
            img = (split.x[i].cpu() * s + m).clamp(0, 1)  # undo the normalisation
            ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray")
        for ax in row:
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def plot_history(history, title: str = "training"):
    """Loss and accuracy per epoch from ``fit``'s history (notebook 01)."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", label="train")
    for key in ("val_acc", "test_acc"):
        if key in history[0]:
            ax_acc.plot(epochs, [r[key] for r in history], "s-", label=key.split("_")[0])
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend(), ax.grid(alpha=0.3)
        ax.set_xticks(epochs)
    fig.tight_layout()
    return fig


def plot_confusion(matrix: torch.Tensor, classes, title: str = "confusion matrix"):
    """Row-normalised confusion matrix (rows: true class, columns: predicted) (notebook 01)."""
    rates = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if matrix[i, j]:
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class (each row sums to 1)")
    fig.tight_layout()
    return fig


def bar_probs(ax, probs, classes, title: str = "", highlight: int | None = None):
    """A bar chart of one probability vector over ``classes``; ``highlight`` marks the true class (notebook 02)."""
    colors = ["tab:orange" if i == highlight else "tab:blue" for i in range(len(classes))]
    ax.bar(range(len(classes)), probs, color=colors)
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_title(title, fontsize=9)
    return ax


def plot_heatmap(matrix, rows, cols, title: str = "", fmt: str = "{:.2f}", cmap: str = "viridis"):
    """An annotated heatmap of a small 2-D tensor (notebook 02's class similarity, sweep grids)."""
    fig, ax = plt.subplots(figsize=(max(5.5, 2 + 0.65 * len(cols)), max(2.8, 1.3 + 0.5 * len(rows))))
    im = ax.imshow(matrix, cmap=cmap)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    hi = float(matrix.max())
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(matrix[i][j])
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 * hi else "white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
