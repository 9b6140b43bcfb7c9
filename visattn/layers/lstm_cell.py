"""An LSTM cell computed with sigmoids only.

Papers: Hochreiter, Schmidhuber, "Long Short-Term Memory", Neural Computation 1997; the forget
gate of Gers, Schmidhuber, Cummins, "Learning to Forget: Continual Prediction with LSTM", Neural
Computation 2000 (the cell of ``torch.nn.LSTMCell``).

Same parameters, initialisation and state dict as ``nn.LSTMCell``, and the same results to float
rounding. The two ``tanh`` are computed as ``tanh(x) = 2σ(2x) - 1``: PyTorch's CPU ``tanh`` kernel
took 3-10x its ``sigmoid`` on the AMD EPYC we measured, and ``nn.LSTMCell``'s two ``tanh`` cost about
a fifth of a 320-row decoding step of the FashionScenes captioner. The input and hidden products are
accumulated into one buffer, so a step is one sigmoid over all four gates. Both products go through
:func:`visattn.layers.onednn_linear.linear`, which leaves training to ``F.linear``/``addmm``.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from .onednn_linear import linear


class SigmoidLSTMCell(nn.LSTMCell):
    """Drop-in ``nn.LSTMCell``: ``(h', c')`` from ``input`` ``(B, input_size)`` and ``(h, c)``.

    Gates ``i, f, g, o`` in ``nn.LSTMCell``'s order; ``c' = σ(f) c + σ(i) tanh(g)`` and
    ``h' = σ(o) tanh(c')``. Unbatched ``(input_size,)`` inputs and ``hx=None`` (zero state) work
    as in ``nn.LSTMCell``.
    """

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"SigmoidLSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        unbatched = input.dim() == 1
        if hx is None:
            zeros = input.new_zeros(input.shape[0] if not unbatched else 1, self.hidden_size)
            hx = (zeros, zeros)
        h, c = hx
        if unbatched:
            input, h, c = input[None], h.reshape(1, -1), c.reshape(1, -1)
        # Out of place: autocast casts each product's operands (it leaves in-place ops alone).
        products = linear(input, self.weight_ih, self.bias_ih + self.bias_hh if self.bias else None)
        h, c = self.advance(products, (h, c))
        return (h[0], c[0]) if unbatched else (h, c)

    def advance(self, input_products: Tensor, hx: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(h', c')`` from the input's share of the gates, ``W_ih x + b_ih + b_hh`` ``(B, 4 * hidden)``,
        given separately when parts of it are known in advance (a word's embedding product, say)."""
        h, c = hx
        hidden = self.hidden_size
        gates = linear(h, self.weight_hh, add=input_products)  # (B, 4 * hidden)
        gates.narrow(1, 2 * hidden, hidden).mul_(2)  # σ(2g) gives tanh(g) = 2σ(2g) - 1
        in_gate, forget_gate, cell_gate, out_gate = gates.sigmoid_().chunk(4, dim=1)  # (B, hidden) each
        c = torch.addcmul(forget_gate * c, in_gate, cell_gate * 2 - 1)
        h = torch.addcmul(-out_gate, out_gate, torch.sigmoid(c * 2), value=2)  # σ(o) (2σ(2c') - 1)
        return h, c
