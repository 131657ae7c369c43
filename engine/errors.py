"""Typed errors a user can cause. The CLIs print these as one line, without a traceback."""


class EngineError(Exception):
    """Base class for every error the engine raises on purpose."""


class RequestError(EngineError, ValueError):
    """A request that cannot be carried out as asked: a device that is not here, a backend that
    cannot read this model, an operation this model does not allow. Also a ValueError, so code
    that catches bad values keeps catching it."""


class ModelNotFoundError(EngineError):
    """A model name or path that resolves to nothing on this machine."""


class RegistryError(EngineError):
    """A malformed models.toml: bad TOML, unknown keys, missing or mistyped fields."""


class ModelFormatError(EngineError):
    """A model file that is corrupt, truncated or of an unsupported kind."""


class GGUFError(ModelFormatError):
    """A GGUF file that fails validation (bad magic, version, sizes, offsets, types)."""


class TemplateError(EngineError):
    """A chat template that fails to compile or render in the sandbox."""


class ContextOverflowError(EngineError):
    """A prompt (plus the tokens to generate) that does not fit the context window."""


class NumericalError(EngineError):
    """Non-finite logits (NaN/Inf), typically float16 overflow: never sampled from."""


class RemoteError(EngineError):
    """A remote model's server that cannot be reached, refuses the key, fails or answers with
    something that is not the OpenAI API. The message names the host and says what to check."""


class OutOfMemoryError(EngineError):
    """A model that does not fit the memory the device has: refused before loading with the
    numbers, or an allocation that failed while loading."""
