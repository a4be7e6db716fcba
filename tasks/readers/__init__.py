"""Readers of users' files: image folders and CSV files, one client per folder or file."""
