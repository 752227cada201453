"""Message types, record names and keys exchanged between the MeDi server and its clients.

Both sides import these names, so a key is spelled once. This module has no
Flower import: the strings are what Flower's records and messages carry.

Flow of one run (who sends what):

| step | message type | server sends | client replies |
|---|---|---|---|
| handshake | ``query.summary`` | ``CONFIG`` (k, fields) | ``SUMMARY`` (k-anonymised counts) |
| round | ``train`` | ``ARRAYS`` (global weights), ``CONFIG`` | ``ARRAYS`` (weight delta), ``METRICS`` |
| synthesis | ``query.synthesize`` | ``ARRAYS`` (EMA weights), ``CONFIG`` (quota) | ``METRICS``, ``SUMMARY`` (counts, memorisation check) |

A site that declines a request (privacy budget spent, k below its floor)
replies with a Flower error whose code is ``DECLINED_ERROR_CODE``.
"""

from __future__ import annotations

from typing import Final

# -- message types (Flower routes "<category>.<action>" to the handler) -------
MSG_SUMMARY: Final = "query.summary"
MSG_TRAIN: Final = "train"
MSG_SYNTHESIZE: Final = "query.synthesize"
SUMMARY_ACTION: Final = "summary"
SYNTHESIZE_ACTION: Final = "synthesize"

# -- record names inside a message's RecordDict ------------------------------
ARRAYS: Final = "arrays"  # ArrayRecord: model weights (server) or weight delta (client)
CONFIG: Final = "config"  # ConfigRecord: round settings from the server
METRICS: Final = "metrics"  # MetricRecord: numbers a client reports
SUMMARY: Final = "summary"  # ConfigRecord: JSON text of counts (handshake, synthesis)

# -- keys of the server's CONFIG record -------------------------------------
SERVER_ROUND: Final = "server-round"  # injected by Flower's strategies
PROXIMAL_MU: Final = "proximal-mu"  # injected by Flower's FedProx
K_ANONYMITY: Final = "k-anonymity"  # counts below k are reported as "<k"
SUMMARY_FIELDS: Final = "summary-fields"  # comma-separated categorical fields to count
MODEL_CONFIG: Final = "model-config"  # JSON of medi_core.config.ModelConfig
DIFFUSION_CONFIG: Final = "diffusion-config"  # JSON of DiffusionConfig
TRAIN_CONFIG: Final = "train-config"  # JSON of TrainConfig
METADATA_SPEC: Final = "metadata-spec"  # JSON of the frozen MetadataSpec
LOCAL_STEPS: Final = "local-steps"
TRANSFER_PRECISION: Final = "transfer-precision"  # "float32" or "float16"
RUN_NAME: Final = "run-name"  # stable name of the federated run (survives --resume)
QUOTA: Final = "quota"  # JSON {site: {class: target count per cell}}
SAMPLE_STEPS: Final = "sample-steps"
SAMPLE_SCHEDULER: Final = "sample-scheduler"  # a name of medi_core.sampling.make_scheduler: "ddim" or "dpmsolver++"
GUIDANCE_SCALE: Final = "guidance-scale"
SAMPLE_SEED: Final = "sample-seed"
SAMPLE_BATCH_SIZE: Final = "sample-batch-size"
SAMPLER_CARD: Final = "sampler-card"  # JSON model card of the global sampler
MAX_SYNTHETIC_PER_CELL: Final = "max-synthetic-per-cell"  # 0: no cap
HOLDOUT_FRACTION: Final = "holdout-fraction"  # share of a site's patches kept out of training
HOLDOUT_SEED: Final = "holdout-seed"  # seeds which patches are held out; the same in every round of a run
# DP-SGD settings the server proposes; each site caps them by its own max-epsilon.
# The run-config keys of medi_server.settings.FederationSettings have the same names.
DP_TARGET_EPSILON: Final = "dp-target-epsilon"  # 0: the site's own max-epsilon
DP_NOISE_MULTIPLIER: Final = "dp-noise-multiplier"  # 0: calibrate from the target epsilon
DP_MAX_GRAD_NORM: Final = "dp-max-grad-norm"  # per-example clipping bound C
DP_NOISE_MULTIPLICITY: Final = "dp-noise-multiplicity"  # noise/timestep draws per example
DP_DELTA: Final = "dp-delta"  # 0: 0.1 / (number of local training patches)

# -- keys of the client's METRICS record -------------------------------------
NUM_EXAMPLES: Final = "num-examples"  # FedAvg weights replies by this key
TRAIN_LOSS: Final = "train-loss"
TRAIN_SECONDS: Final = "train-seconds"  # wall time of the local optimiser steps
HANDLER_SECONDS: Final = "handler-seconds"  # wall time of the whole train handler
STEPS_DONE: Final = "steps"
EPSILON: Final = "epsilon"  # privacy spent so far at this site; absent without DP
EPSILON_DELTA: Final = "delta"
SYNTHETIC_WRITTEN: Final = "synthetic-written"  # patches written by the synthesis handler

# -- error replies -----------------------------------------------------------
# Error code of a reply in which a site declines a request on purpose (privacy
# budget spent, k below the site's floor); Flower 1.42 uses codes 0-8.
DECLINED_ERROR_CODE: Final = 1001

# -- keys of the SUMMARY record ----------------------------------------------
SUMMARY_JSON: Final = "json"
SITE_ID: Final = "site-id"
MEMORISATION_JSON: Final = "memorisation"  # synthesis reply: memorisation check summary (counts, distances)

# -- node config keys (set per site with `flower-supernode --node-config`) ---
NODE_DATA_PATH: Final = "data-path"
NODE_SITE_ID: Final = "site-id"
MEMORISATION_JSON: Final = "memorisation"  # synthesis reply: memorisation check summary (counts, distances)
NODE_OUTPUT_DIR: Final = "output-dir"
NODE_MAX_EPSILON: Final = "max-epsilon"  # 0 or absent: no DP
NODE_PRIVACY_STATE_DIR: Final = "privacy-state-dir"
NODE_DATA_KIND: Final = "data-kind"  # medi_core.data.sources.SourceKind
NODE_DEVICE: Final = "device"  # "auto", "cpu" or "cuda"
NODE_AUDIT_LOG: Final = "audit-log"  # JSONL file listing every reply the client sends
NODE_MIN_K: Final = "min-k"  # the site rejects summary requests whose k-anonymity is below this

SUPPRESSED_PREFIX: Final = "<"  # a k-anonymised count is written "<k", for example "<5"
