"""Model architectures for FlexServe's three families.

Each module holds only `nn.Module`s and the frozen dataclass that configures them; a
checkpoint stores that config so the model can be rebuilt from it (`build_model`).
"""
