"""The web/WebXR viewer: bundles of real and dreamed episodes, and the loopback server for them.

``dreamgym view <dataset-or-run>`` builds a bundle (``bundle``) and serves it with the three.js
page in ``avatars/web`` (``server``); ``headless`` drives headless Chromium to screenshot it.
"""
