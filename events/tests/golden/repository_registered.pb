$01900000-0000-7000-8000-000000000001repo/team-a/blueprints (2ÊâĞ€åšw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01Z§
¤
¡
team-a
blueprintsgit"n
/https://git.example.com/platform/blueprints.gitmain/catalog *cairn2cairn@example.com:git-credentials*
*/10 * * * *€÷ÄÕ