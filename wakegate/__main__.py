from wakegate.tools.cli import main

main()
