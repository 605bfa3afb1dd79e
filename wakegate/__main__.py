from wakegate.cli import main

main()
