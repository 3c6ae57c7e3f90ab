from mailexec.entry import main

main()
