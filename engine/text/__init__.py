"""Text handling: tokenizers (GGUF BPE and SentencePiece vocabularies, Hugging Face tokenizer
files), chat templates rendered in a sandbox, and tool-call parsing."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "ToolCall": ".toolcalls",
    "ParsedReply": ".toolcalls",
    "parse_tool_calls": ".toolcalls",
    "OPEN_TAG": ".toolcalls",
    "PYTHON_TAG": ".toolcalls",
    "HFTextSide": ".hf_text",
    "TEXT_FILES": ".hf_text",
    "load_hf_text_side": ".hf_text",
    "ChatTemplate": ".template",
    "Tokenizer": ".tokenizer",
    "inert": ".terminal",
    "Reasoning": ".reasoning",
    "ThinkMarkers": ".reasoning",
    "KNOWN_MARKERS": ".reasoning",
    "ReasoningSplitter": ".reasoning",
})
