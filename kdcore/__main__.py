from kdcore.cli import main

main()
