"""One config → a TL-native model: a plain torch module to train, a bridge to analyse.

TransformerLens 4 builds from-scratch models with ``TransformerBridge.boot_native``; the bridge
wraps the module's components in hook points. We keep two module trees that **share every
parameter**: ``raw`` (a plain :class:`NativeModel`, trained at plain-torch speed) and the
bridge's wrapped copy (``bridge``), whose hook points — ``blocks.{l}.hook_resid_post``,
``blocks.{l}.attn.hook_z``, … — see every update made to ``raw``.

Regression families need a linear read-in of (x, y) tokens and a scalar read-out. The read-in
lives on the module (``read_in``) and is applied to float inputs of width ``d_in``; the
read-out is the unembedding with ``d_vocab_out = 1``. Float inputs reach the bridge as
``inputs_embeds``, so the hook names inside the blocks are unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module  # public in TL 4.3
from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model

from tvlens.models.config import ModelConfig
from tvlens.tasks.base import TaskFamily
from tvlens.validation import check_token_ids


class TaskNativeModel(NativeModel):
    """TL's :class:`NativeModel` plus an optional linear read-in for continuous tokens."""

    def __init__(self, cfg: TransformerBridgeConfig, d_in: int | None = None) -> None:
        super().__init__(cfg)
        self.read_in = nn.Linear(d_in, cfg.d_model) if d_in else None

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if input_ids is not None and input_ids.is_floating_point():
            input_ids, inputs_embeds = None, input_ids
        if (
            inputs_embeds is not None
            and self.read_in is not None
            and inputs_embeds.shape[-1] == self.read_in.in_features
        ):
            inputs_embeds = self.read_in(inputs_embeds)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


def bridge_config(model: ModelConfig, family: TaskFamily) -> TransformerBridgeConfig:
    """The TransformerBridgeConfig for ``model`` sized to ``family``."""
    return TransformerBridgeConfig(
        d_model=model.d_model,
        d_head=model.d_head,
        n_layers=model.n_layers,
        n_ctx=model.n_ctx or family.seq_len,
        n_heads=model.n_heads,
        d_mlp=model.d_mlp,
        d_vocab=family.d_vocab,
        d_vocab_out=family.d_out,
        act_fn=model.act_fn,
        normalization_type=model.normalization,
        positional_embedding_type=model.positional,
        architecture="TransformerLensNative",
        model_name=f"tvlens-{family.name}",
        seed=model.seed,
        tokenizer_prepends_bos=False,
    )


def _share_parameters(src: nn.Module, dst: nn.Module) -> None:
    """Make every parameter of ``dst`` the very tensor of ``src`` (same module tree)."""
    for name, module in dst.named_modules():
        source = src.get_submodule(name)
        for key in list(module._parameters):
            module._parameters[key] = source._parameters[key]


class TaskModel(nn.Module):
    """A task-family model: ``raw`` for training, ``bridge`` for hooks and analysis."""

    def __init__(self, config: ModelConfig, family: TaskFamily) -> None:
        super().__init__()
        config.validate(seq_len=family.seq_len, d_in=family.d_in)
        self.config = config
        self.family_name = family.name
        self.kind = family.kind
        self.d_in = family.d_in
        self.tl_config = bridge_config(config, family)
        cfg = copy.deepcopy(self.tl_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.raw = TaskNativeModel(cfg, d_in=family.d_in)
            initialize_native_model(self.raw, cfg, seed=config.seed)
        self._bridge: TransformerBridge | None = None

    # ------------------------------------------------------------------ forward
    def check_inputs(self, inputs: Tensor) -> None:
        """Raise a clear error for inputs of the wrong kind or length."""
        n_ctx = self.tl_config.n_ctx
        if self.d_in is None:
            if inputs.dim() != 2 or inputs.is_floating_point():
                raise ValueError(
                    f"expected token ids of shape [batch, pos] (integer); got "
                    f"{inputs.dtype} of shape {tuple(inputs.shape)}."
                )
            check_token_ids(inputs, self.tl_config.d_vocab)
        elif inputs.dim() != 3 or inputs.shape[-1] != self.d_in:
            raise ValueError(
                f"expected regression tokens of shape [batch, pos, {self.d_in}]; got "
                f"{tuple(inputs.shape)}."
            )
        if inputs.shape[1] > n_ctx:
            raise ValueError(
                f"sequence length {inputs.shape[1]} exceeds the model's n_ctx={n_ctx}; "
                "shorten the sequences or build the model with a larger model.n_ctx."
            )

    def forward(self, inputs: Tensor) -> Tensor:
        """Read-out of the raw module: logits ``[B, T, V]`` or ``[B, T, 1]``."""
        self.check_inputs(inputs)
        return self.raw(inputs)

    # ------------------------------------------------------------------ bridge
    @property
    def bridge(self) -> TransformerBridge:
        """The TransformerBridge over the same weights (built on first use, in eval mode)."""
        if self._bridge is None:
            from tvlens.versions import check_versions

            check_versions()
            cfg = copy.deepcopy(self.tl_config)
            shadow = TaskNativeModel(cfg, d_in=self.d_in)
            _share_parameters(self.raw, shadow)
            shadow.to(next(self.raw.parameters()).device)
            bridge = build_bridge_from_module(
                shadow,
                architecture="TransformerLensNative",
                tl_config=cfg,
                model_name=cfg.model_name,
            )
            bridge.eval()
            # Stored outside nn.Module's registry so state_dict() holds the weights once.
            object.__setattr__(self, "_bridge", bridge)
        return self._bridge  # type: ignore[return-value]

    def state_dict_raw(self) -> dict[str, Tensor]:
        return self.raw.state_dict()

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def d_model(self) -> int:
        return self.config.d_model
