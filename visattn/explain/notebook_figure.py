"""The figure class visattn draws in: a notebook shows it as an image where it is a cell's value.

visattn draws without pyplot (no global figure state, safe in threads), and matplotlib's own notebook display is
registered by pyplot's inline backend only: a bare ``Figure`` in a cell that never used pyplot showed as the text
``<Figure size 750x360 with 3 Axes>``. IPython shows any object with ``_repr_png_`` as that PNG.
"""
import io

from matplotlib.figure import Figure


class NotebookFigure(Figure):
    """A matplotlib ``Figure`` that IPython and Jupyter display as a PNG, drawn as ``save_figure`` writes it."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
