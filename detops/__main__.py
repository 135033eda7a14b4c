from detops.cli import main

main()
