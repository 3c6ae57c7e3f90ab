from mailexec.cli import main

main()
