"""What every process needs beside the contract: settings from the environment, retry delays, metrics text."""
