"""``import models`` is ``surgery.models`` (the code lives in surgery/models/).

Installed this way so that a file named ``models.py`` in a user's working directory
cannot break ``import surgery``; see surgery/aliases.py.
"""
from surgery.core.aliases import alias_package

alias_package(__name__, "surgery.models")
