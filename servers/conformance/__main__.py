"""`python -m servers.conformance [--http] [--host H] [--port N]`: run the fixture server on its own."""

from servers.conformance.app import main

if __name__ == "__main__":
    main()
