"""Linux: ``/dev/net/tun`` (``tun.py``), netlink (``netlink.py``), network namespaces
(``netns.py``), and the backend that puts them together (``backend.py``).

Nothing is imported here, so that ``netns`` (used by :mod:`trio_tun.testing`)
imports on any system.
"""
