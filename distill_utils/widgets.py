"""ipywidgets explorers that fall back to a static figure when no live frontend is attached.

papermill and nbval execute notebooks without a browser: widgets there would show nothing,
so ``explore`` draws the figure once for the controls' starting values instead. Set
``DISTILL_WIDGETS=1`` or ``0`` to force either behaviour (notebook 02).
"""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
from IPython.display import display


def live_frontend() -> bool:
    """True inside JupyterLab/Notebook (jupyter_server sets JPY_SESSION_NAME) or VS Code."""
    flag = os.environ.get("DISTILL_WIDGETS")
    if flag in ("0", "1"):
        return flag == "1"
    return "JPY_SESSION_NAME" in os.environ or "VSCODE_PID" in os.environ


def explore(draw, **controls) -> None:
    """Call ``draw(**values)`` (it makes a matplotlib figure) whenever a control changes.

    ``controls`` are ipywidgets (sliders, dropdowns) keyed by ``draw``'s argument names.
    Without a live frontend, draws once with the controls' current values.
    """
    if not live_frontend():
        draw(**{name: widget.value for name, widget in controls.items()})
        plt.show()
        return
    import ipywidgets as w

    def redraw(**values):
        draw(**values)
        plt.show()

    out = w.interactive_output(redraw, controls)
    display(w.VBox([w.HBox(list(controls.values())), out]))
