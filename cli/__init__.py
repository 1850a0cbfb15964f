"""The ``dait-cache`` command line: thin click commands over the library."""
