"""A todo list on the command line, kept in a JSON file."""
