"""Sharing trained models as one zip file (nnU-Net's export/install shape): ``export_model``, ``install_model``.

The zip holds what ``autotrans_predict`` needs from a results folder, under the paths it has below
``$autotrans_results`` (``DatasetXXX_Name/<model>__<plans>__<configuration>/...``), so installing it is an
extraction into another results root, after which the model is found like a locally trained one:

- ``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` and a ``MODEL_CARD.md`` written at export;
- per fold: the chosen checkpoint(s), ``progress.png`` and ``validation/summary.json`` where training wrote them;
- ``autotrans_export.json`` at the top: autotrans and torch versions and the SHA-256 and size of every file.

Not included: raw or preprocessed data, validation predictions, training logs and ``debug.json`` (they name
local paths and the host; the card carries what they record).

Checkpoints are stripped by default to what inference, ``load_checkpoint`` and ``-pretrained_weights`` read
(networks, family, configuration, plan hash, overrides, mirror axes, and the epoch/history/run settings the card
quotes); optimizer, scheduler, scaler and RNG states go (a stripped checkpoint cannot be resumed with ``--c``).
``full_checkpoints=True`` keeps them.

Latent models hold their autoencoder's (and the ControlNet its prior's) weights in their own checkpoints, so
inference never needs the dependency's folder; its path in the checkpoint's overrides (an absolute path into the
exporter's results root) is stored relative to the root in the zip and made absolute in the installing root.
``include_dependencies=True`` also exports those dependency model folders (to train further models on the same
autoencoder).

A shared zip is untrusted input. Install refuses, with one line and before anything lands in the results root:
a damaged or truncated zip, members outside the expected layout (absolute paths, ``..``, links, other file
kinds, files the manifest does not list), content whose checksum or size differs from the manifest, and
checkpoints the weights-only loader refuses (a pickle crafted to run code) or that do not belong to their plans.
It extracts into a hidden folder in the results root, validates there, then renames each model folder into place;
an existing model folder is replaced only with ``overwrite=True``.
"""
from __future__ import annotations

from autotrans.sharing.card import write_model_card
from autotrans.sharing.export import export_model
from autotrans.sharing.install import install_model
from autotrans.sharing.layout import CARD, MANIFEST, check_member

__all__ = ["CARD", "MANIFEST", "check_member", "export_model", "install_model", "write_model_card"]
