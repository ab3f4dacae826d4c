"""Fixed evaluation constants of this workspace: read-only to the agent, written by `autoresearch setup`."""

MAX_SEQ_LEN = 2048  # tokens per training row and per evaluation row
TIME_BUDGET = 300  # seconds of training per experiment (compilation steps excluded)
STARTUP_ALLOWANCE = 120  # seconds beyond TIME_BUDGET to hand over the model (imports, compile, export)
EVAL_TOKENS = 40 * 524288  # validation tokens scored by evaluate_bpb
VOCAB_SIZE = 8192  # BPE vocabulary size, 4 special tokens included
DATASET = "climbmix"  # data source: climbmix, fineweb-edu, tinystories, pystdlib or a folder path
PROFILE = "h100"  # hardware profile these values came from (see core/profiles.py)
