from runtime.enhancer import Enhancer

__all__ = ["Enhancer"]
