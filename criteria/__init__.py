"""``import criteria`` is ``surgery.criteria`` (the code lives in surgery/criteria/).

Installed this way so that a file named ``criteria.py`` in a user's working directory
cannot break ``import surgery``; see surgery/aliases.py.
"""
from surgery.core.aliases import alias_package

alias_package(__name__, "surgery.criteria")
