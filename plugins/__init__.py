"""any2ds's built-in plugins, registered through the ``any2ds`` entry-point group like any other."""
