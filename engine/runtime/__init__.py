"""Running a model: the backends behind one interface (native PyTorch, llama.cpp), sampling,
generation, chat sessions and the context-window policy."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "Model": ".base",
    "NativeModel": ".native",
    "DecodeRunner": ".runner",
    "LlamaCppModel": ".llamacpp",
    "RemoteModel": ".remote",
    "SamplingParams": ".sampling",
    "make_sampler": ".sampling",
    "ChatSession": ".session",
    "POLICY": ".context",
    "fit_to_context": ".context",
})
