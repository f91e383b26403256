"""ControlNet: model files (``models.py``) and their residuals added to the UNet per step (``apply.py``).

Work in progress for issue 21: the units' UI, the A1111 extension's API and routes, preprocessors beyond the simple
ones, IP-Adapter and depth2img are not built yet.
"""
