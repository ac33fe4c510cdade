"""Data: the preference schema every source produces, and the sources themselves."""
