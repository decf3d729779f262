$01900000-0000-7000-8000-000000000002repo/team-a/blueprints (2‚ÊâÐ€åšw:$01900000-0000-7000-8000-00000000c0deB$01900000-0000-7000-8000-00000000c0deJalice@example.comR9
700-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01Zª§
¤
team-a
blueprintsgit"q
/https://git.example.com/platform/blueprints.gitrelease/catalog *cairn2cairn@example.com:git-credentials*
*/10 * * * *€÷ÄÕ